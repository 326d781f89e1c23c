"""A method's training step under data parallelism (2 CPU processes, gloo) against one process holding the whole
batch, where the ranks' shares differ in what the loss is normalised by.

RetRobust's loss is the NLL of the answer tokens divided by their count over the GLOBAL batch: rank r returns
S_r / mean_r(n_r), so that the gradients averaged over the ranks are those of sum_r S_r / sum_r n_r. Here the four
rows have 1, 2, 4 and 12 answer tokens: however the sampler deals them two per rank, the ranks' counts differ
(3 vs 16, 5 vs 14 or 13 vs 6), and a rank dividing by its own count would weigh its tokens differently."""

from __future__ import annotations

import pytest

from test_fsdp2 import _compare_methods
from test_fsdp2 import _retrobust as _retrobust_rows

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("one_thread")]

# (token ids, answer tokens): prompts and answers of different lengths
ROWS = [([5, 17, 230, 41, 9], 1), ([77, 310, 12, 6, 801, 44, 2], 2), ([900, 3, 55, 120, 7, 61, 88], 4),
        ([8, 61, 402, 19, 27, 33, 140, 141, 142, 143, 144, 145, 146, 147, 148], 12)]


def _retrobust(lm_dir, batch_size):
    return _retrobust_rows(lm_dir, batch_size, rows=ROWS, micro_batch_size=2)


def test_retrobust_step_with_unequal_answer_lengths_equals_one_process(tiny_llama_dir, tmp_path):
    """FSDP2 over 2 processes (no gradient clipping: the update's size shows a wrong normaliser as well as its
    direction): the updated adapters and the mean of the ranks' losses equal one process's step on the 4 rows."""
    _compare_methods(_retrobust, (tiny_llama_dir,), tmp_path)
