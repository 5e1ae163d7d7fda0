"""Limits on the work a job spec can cause while it is read: bytes, lines, values, depth, numbers and tags."""

# Limits on the work a spec can cause, each checked before that work is done: the size on the bytes read,
# the flow depth on the raw text, the values and depth while ruamel composes the document (before anything
# is constructed: an alias *a or a merge <<: *a counts the whole of what it repeats), numbers as they are
# constructed. Every real job spec is far inside them; composing MAX_NODES values takes well under a second.
MAX_BYTES = 1024 * 1024
MAX_LINES = 10_000  # ruamel scans a line in microseconds; a million short lines would take seconds
MAX_NODES = 10_000
MAX_DEPTH = 32
MAX_FLOW_DEPTH = 100  # checked on the raw text: ruamel is slow to hit RecursionError on [[[[...]]]]
MAX_NUMBER = 2**63  # |number| must be below this; the models have tighter bounds for every key
MAX_NUMBER_CHARS = 100  # longer number literals are not even converted (int() of 5,000 digits is refused)
MAX_TAG_PROBLEMS = 20
MAX_TAG_CHARS = 100  # ruamel decodes a tag in quadratic time: a 1 MB tag would take a minute
