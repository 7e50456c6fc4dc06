from services.detector.service import spec
from shared.service import main

main(spec)
