"""`python -m nanovllm.entrypoints.api_server ...`: the same as `nanovllm-api ...`."""

from nanovllm_api.cli import main

if __name__ == "__main__":
    main()
