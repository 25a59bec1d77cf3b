"""Recipient validation at RCPT: sources that say whether a hosted address exists.

Owns: the recipient-source interface and its implementations (static local parts, a map file,
an LDAP/Active Directory directory, a call-ahead probe of the next hop), their cache and the
ordered chain a hosted domain consults. Unknown recipients are refused at RCPT so that no bounce
for them ever goes to a forged sender (backscatter).
Must not: decide relaying (policy/ does, before any source is asked) or write the queue.
"""
