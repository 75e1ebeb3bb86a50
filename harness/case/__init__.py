"""What a case is: the description every other room reads, as data.

The :class:`~attnbench.case.problem.Problem` and its fields declared once (``fields``), the keys
and labels derived from them (``keys``), masks and block layouts (``patterns``), planted probes
(``probes``), the KV cache of a decode step (``kvcache``), devices by name (``devices``), the
modes as declarations (``modes``: what a call computes, its work factor, its bytes), the
statuses a record can end with (``status``), and the case's own function and work
(``reference``: softmax attention in float64; ``work``: FLOPs and bytes).

Layer ``case``: imports nothing of attnbench outside ``attnbench.case``.
"""
