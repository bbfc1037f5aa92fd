"""Stage rules/data.smk: read raw corpora in their formats, clean, dedupe and split them."""
