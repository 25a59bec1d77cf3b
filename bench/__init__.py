"""mailgate's side-by-side benchmark against Postfix; run it with `python -m bench.run` (see
docs/performance.md). Not part of the installed package and not collected by pytest."""
