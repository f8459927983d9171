import sys

from loyalty_moengage_devtools.bench import main

sys.exit(main())
