import sys

from services.acoustic.service import main

sys.exit(main())
