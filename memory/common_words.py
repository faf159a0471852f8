"""The commonest English words: a viewer named one of them ("you", the terminal's own name; "god",
"sun", "nice") is a pseudonym only where the name stands for the viewer (authors, @mentions), never
where the word is just a word. Function words, pronouns and the most frequent verbs, nouns and
adjectives of everyday chat."""

COMMON = frozenset("""
a about above after again against all almost also always am an and another any anyone anything
are around as ask at away back bad be because been before being below best better between big
both boss but by came can cat chat come could day did do does dog doing done down during each
else even ever every fine first for friend from fun game games get go god going gone good got
great guy had happy has have he hello her here hers herself hey hi him himself his home how i if
in into is it its itself just keep kind know last let life like little live long look lot love
made make man many may me mine more most much must my myself new next nice night no nobody none
nor not nothing now of off oh ok okay old on once one only or other our ours ourselves out over
own people play please pretty real really right said same say see she should so some someone
something stream sun sure take than thank thanks that the their theirs them themselves then there
these they thing things think this those though through time to today too true try under until
up us very want was way we well went were what when where which while who whom why will with
world would yes yet you your yours yourself yourselves
""".split())
