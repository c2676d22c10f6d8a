self.addEventListener('push', () => {});
