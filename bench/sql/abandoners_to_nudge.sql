-- Members of cart_abandoners_7d, not of loyalists_30d, with push or email consent.
SELECT user_id
FROM users
WHERE user_id IN (SELECT user_id FROM seg_cart_abandoners_7d)
  AND user_id NOT IN (SELECT user_id FROM seg_loyalists_30d)
  AND (coalesce(push_consent, false) OR coalesce(email_consent, false))
