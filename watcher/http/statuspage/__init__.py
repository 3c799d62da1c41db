"""`GET /`: the status page for operators, read from the store (`page`) and rendered as HTML (`render`)."""
