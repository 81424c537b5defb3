import sys

from layerprune.worker import main

main(sys.argv[1:])
