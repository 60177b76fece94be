"""The runtime and energy models: fit, price, compare (paper 1 §3.4-§4).

- fit.py        PE(p) and g from measured points, with the checks that refuse a bad fit
- fitted.py     the fit of a stored run, with its validation figures
- cost_model.py CostModel / ModelSet: t(p, o) and E(p, o), saved as JSON
- decode.py     D(p, o) from decode curves, each step priced at the context it attends over
- estimate.py   queries priced in seconds, dollars and joules
- helm.py       HELM's efficiency JSON read and written
- compare.py    two stacks side by side
- tradeoffs.py  capability against cost (paper 2's trade-off figures)
- variance.py   variation over trials and raw vs denoised vs idealized runtime
- runfit.py     a stored run or points file fitted for a caller: settings checked, saved, told
- pricing.py    a fitted model priced for a caller: overrides read, queries gathered
- sources.py    where fitted models come from for comparisons (stores, files, HELM)
"""
