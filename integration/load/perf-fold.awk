# Folds `perf script -F comm,ip,sym` output into one line per distinct stack,
# root first: "comm;frame;...;leaf count" (the folded format flame graph
# tools read). perf prints each sample as a header line and its frames, leaf
# first, followed by a blank line.
BEGIN { RS = "" }
{
	n = split($0, l, "\n")
	split(l[1], h, " ")
	stack = h[1]
	for (i = n; i >= 2; i--) {
		s = l[i]
		sub(/^[ \t]*[0-9a-f]+ /, "", s)
		gsub(/;/, ":", s)
		stack = stack ";" s
	}
	count[stack]++
}
END { for (s in count) print s, count[s] }
