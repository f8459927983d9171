import sys

from loyalty_moengage.devtools.bench import main

sys.exit(main())
