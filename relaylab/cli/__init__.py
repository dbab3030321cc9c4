"""The command line (``relaylab serve | demo | call``) and what only it needs: the ngrok
tunnel and the offline demo."""
