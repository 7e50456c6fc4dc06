"""Composition of the detector service."""

from __future__ import annotations

from datetime import timedelta

from services.detector import api
from services.detector.classification import load_rules
from services.detector.handlers import Detector, decode
from shared.service import ServiceSpec
from shared.settings import VigilSettings
from shared.topics import ALERTS_RAW, COORDINATION


def spec(settings: VigilSettings) -> ServiceSpec:
    detector = Detector(
        correlation_window=timedelta(seconds=settings.correlation_window_s),
        classifier=load_rules(settings.classification_rules),
    )
    return ServiceSpec(
        name="detector",
        consumes=(ALERTS_RAW, COORDINATION),
        decoder=decode,
        handler=detector.handle,
        routers=api.routers,
    )
