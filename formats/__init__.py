"""Pure data: media types, digests, descriptors, documents, platforms, references."""
