"""Reward models: Bradley–Terry fine-tunings of M diverse members from a shared linear-probed init."""
