from gpujob.cli.app import main

main()
