from services.reporter.service import spec
from shared.service import main

main(spec)
