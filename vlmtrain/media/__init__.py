"""Media items keyed by modality (image now; video and audio are one ``MediaKind`` entry each)."""

from vlmtrain.media.item import MediaItem
from vlmtrain.media.kinds import MODALITIES, PART_TYPES, MediaKind, MediaLimits, check_supported, kind_of

__all__ = ["MODALITIES", "PART_TYPES", "MediaItem", "MediaKind", "MediaLimits", "check_supported", "kind_of"]
