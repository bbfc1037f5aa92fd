"""Stage rules/models.smk: find, fetch, build and load base models and their chat templates."""
