"""Human review at the site (``medfed site review``): the cases a model is unsure of, with
where in the image its score comes from, for a reviewer; and the reviewer's labels back.

- `queue`: scores the site's cases with a frozen model (as delivery does) and puts those
  whose score lies within the uncertainty band around the operating threshold into a review
  queue, ``SITE/review/<queue id>/``: per case the stored image as a PNG and the same image
  with a saliency heatmap blended in (`saliency`), and an index, ``queue.json``.
- `feedback`: a reviewer's corrected labels (a CSV keyed by case id) update the site's
  manifest (received cases waiting for a label join it, as ``medfed site label`` moves
  them), all rows or none, each recorded in the site's audit trail.

All of it stays at the site: no Flower message carries any of it (the ClientApp's replies
are fixed by `task.wire` and its egress guard), and the queue is kept outside any run
directory. The queue holds plain PNGs for a radiologist's viewer, not encrypted like the
store: see `queue` for why and how they are protected.
"""


class ReviewError(ValueError):
    """Review cannot go ahead: a one-line reason naming the file, row or field at fault."""


#: The site directory's folder of review queues.
REVIEW_DIR = "review"
