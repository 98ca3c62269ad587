import sys

from services.frontend.service import main

sys.exit(main())
