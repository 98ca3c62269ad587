import sys

from services.vocoder.service import main

sys.exit(main())
