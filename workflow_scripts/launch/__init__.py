"""GPU slots and the local multi-process launcher (rules/*.smk start GPU jobs through
these). Beside the shared layer: imports only `common`."""
