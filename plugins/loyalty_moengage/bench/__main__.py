import sys

from loyalty_moengage.bench import main

sys.exit(main())
