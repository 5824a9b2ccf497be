from zturbo.cli import main

main()
