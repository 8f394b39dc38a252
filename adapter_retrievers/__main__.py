from adapter_retrievers.cli import main

main()
