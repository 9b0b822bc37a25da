import os
import sys

from smis_jax.app import main

code = main()
# Leave without interpreter teardown: after Ctrl-C, the server's daemon handler threads and XLA's thread pools can
# still be alive while Python finalises, and that teardown occasionally aborted the process (SIGABRT, exit -6) in
# CI. Nothing remains to be written but stdio, so flush it and exit with the CLI's own status.
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
