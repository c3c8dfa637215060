-- Members of loyalists_30d without a purchase in [as_of - 3d, as_of).
SELECT user_id
FROM seg_loyalists_30d
WHERE user_id NOT IN (SELECT user_id FROM events WHERE event = 'purchase' AND ts >= as_of() - INTERVAL 3 DAY)
