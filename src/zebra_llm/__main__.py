from zebra_llm.cli import main

main()
