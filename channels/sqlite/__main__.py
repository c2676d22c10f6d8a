"""The database writer process (``channels.sqlite.writer``), started by ``WriterProcess``.

Its entry point is the package rather than ``channels.sqlite.writer`` itself: the
package imports that module, and running an imported module as ``__main__`` would
load it twice.
"""

import sys

from channels.sqlite.writer import main

main(sys.argv[1:])
