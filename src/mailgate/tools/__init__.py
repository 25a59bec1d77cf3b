"""Admin tools (issue 7): the engines behind `mailgate mx`, `relay-test`, `explain`, `send`,
`cert` and the start-up self-audit. The command-line front ends live in `mailgate.cli`."""
