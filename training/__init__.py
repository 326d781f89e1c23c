"""Infrastructure every method uses (checks of the files a run reads before it starts, ...); imports nothing
from Lightning at module level."""
