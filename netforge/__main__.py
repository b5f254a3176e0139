from netforge.cli.main import main

main()
