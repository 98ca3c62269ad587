import sys

from services.http.main import main

sys.exit(main())
