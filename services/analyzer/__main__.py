from services.analyzer.service import spec
from shared.service import main

main(spec)
