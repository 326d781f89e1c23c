"""RL library (no Lightning): multi-turn rollouts with a search tool, rewards, advantages (GRPO, GAE),
KL estimators and policy losses. Used by ``lightning_modules.search_r1.SearchR1``."""
