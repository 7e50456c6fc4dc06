from services.coordinator.service import spec
from shared.service import main

main(spec)
