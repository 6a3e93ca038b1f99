"""What a text prompt needs besides the model: a text encoder and the training views' language features.

``language_context(pipeline)`` builds it from a run's datamanager (its ``--pipeline.datamanager.language.*``
source, or an override), loading the per-view records lazily; :class:`LanguageContext` encodes phrases into
:class:`~segsplat_ns.contract.TextQuery` objects against LERF's canonical phrases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from segsplat_ns.contract import LanguageViews, TextQuery
from segsplat_ns.errors import PromptError
from segsplat_ns.language.features import LanguageSourceError
from segsplat_ns.language.relevancy import CANONICAL_PHRASES

if TYPE_CHECKING:
    from segsplat_ns.language.encoders import ImageTextEncoder
    from segsplat_ns.language.sources import LanguageSourceConfig


@dataclass
class LanguageContext:
    """A text encoder and the training views' language records (``views``)."""

    encoder: "ImageTextEncoder"
    views: LanguageViews
    _canonical: Optional[torch.Tensor] = None

    @property
    def description(self) -> str:
        """What the features are, for messages and tables (the synthetic scene's are a stand-in for CLIP)."""
        return self.encoder.kind

    def encode(self, phrase: str) -> TextQuery:
        """The phrase (whitespace collapsed) and the canonical phrases, encoded. Empty phrase: a PromptError."""
        phrase = " ".join(str(phrase).split())
        if not phrase:
            raise PromptError('empty text prompt: type what to find, e.g. "lamp"')
        try:
            if self._canonical is None:
                self._canonical = self.encoder.encode_text(list(CANONICAL_PHRASES)).float()
            embedding = self.encoder.encode_text([phrase])[0].float()
        except LanguageSourceError as error:  # e.g. a phrase outside the stand-in's vocabulary, no CLIP weights
            raise PromptError(str(error)) from error
        return TextQuery(phrase, embedding, self._canonical)


def language_context(pipeline, source: Optional["LanguageSourceConfig"] = None) -> LanguageContext:
    """The language context of a loaded run: its datamanager's language source (or ``source`` instead), the
    training cameras and their records. Raises :class:`LanguageSourceError` naming the fix when there are none."""
    datamanager = pipeline.datamanager
    if source is None:
        return _context(datamanager)
    # the override is used for this context only: the datamanager keeps its own source and records
    saved = datamanager.config.language, datamanager.train_language
    datamanager.config.language, datamanager.train_language = source, None
    try:
        return _context(datamanager)
    finally:
        datamanager.config.language, datamanager.train_language = saved


def _context(datamanager) -> LanguageContext:
    from segsplat_ns.language.sources import text_encoder_for

    config = datamanager.config.language
    encoder = text_encoder_for(config, datamanager.data_dir)
    records = datamanager.load_train_language()
    return LanguageContext(encoder, LanguageViews(datamanager.train_dataset.cameras, records, source=config.source))
