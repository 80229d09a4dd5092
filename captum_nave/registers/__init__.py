"""Register vs no-register comparison of ViTs (token norms, CLS attention, CLS
decomposition, NAVE agreement, CorLoc)."""
