"""Operations: replaying fixtures, the demo, browsing and re-driving dead letters."""
