from netforge.cli import main

main()
