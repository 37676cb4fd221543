"""The span decoder's constants, in a leaf module: the public API (spans.py) and the Triton kernel
(triton/spans.py) both read them, and neither imports the other."""

MAX_SEQUENCE_LENGTH = 65535  # i and j are packed into 16 bits each in the ranking key
# Ranks beyond a row's spans are padding (-1, -1, -inf): allowed up to this many, so that the output's
# width need not depend on S; beyond both, top_k is refused rather than allocated.
MAX_TOP_K = 65535
SCORES = ("prob", "logit")
MASKED_LOGIT = -10000.0  # transformers' value for tokens outside the context
_NO_KEY = -9_200_000_000_000_000_000  # below every span's key (the lowest is about -9.1873e18)
