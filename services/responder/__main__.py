from services.responder.service import spec
from shared.service import main

main(spec)
