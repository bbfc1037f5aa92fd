"""Stage rules/evaluate.smk: losses on the test split, generation, text and tool-call
metrics, and the bootstrap statistics behind every interval."""
