"""Policy optimisation against any reward function: best-of-N and REINFORCE with a KL penalty α."""
