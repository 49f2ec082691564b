"""``vlmtrain inspect-mask``: see, token by token, what the loss trains on, and lint a whole split.

select (``--rows``) -> load (every raw row, bad ones kept in place) -> rows (render + mask through
``vlmtrain.data.rows.render_example``, problems classified) -> terminal / jsonl / html, and summary.
"""
