"""Stage rules/train.smk: chat tokenization, packing, the token-weighted loss, adapter
training with its progress records, and merging an adapter into its base."""
