from nanovllm_api.cli import main

main()
