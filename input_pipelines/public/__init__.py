"""Preparation scripts for public datasets: raw files as published -> prepared dataset directory.

Each module is runnable as `python -m input_pipelines.public.<name> --raw DIR --out DIR` and
documents where the raw files come from, their licence and every filtering step
(docs/data.md, "Public datasets"). The raw data is never committed; nothing is downloaded at run
time.
"""
